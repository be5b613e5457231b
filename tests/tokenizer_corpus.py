"""A varied corpus for tokenizer parity: English, code, 20+ scripts, emoji, whitespace, digits,
and unusual or invalid Unicode (combining marks, joiners, bidi controls, private use, noncharacters,
lone surrogates)."""

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 9:41 and we've got 3,141,592 reasons!",
    "I'M SHOUTING, you're whispering, they'd've known, we'll see, she'd, he's, it'll.",
    'def add(a: int, b: int) -> int:\n    """Sum."""\n    return a + b  # noqa\n\n\tif x != y:\n',
    'fn main() { let v: Vec<u8> = vec![0x1F, 0xFF]; println!("{:?}", v); }\r\n',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "Le cœur a ses raisons que la raison ne connaît point. Ça va? Öl, Straße, niño, São Paulo.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",  # Cyrillic
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",  # Greek
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق",  # Arabic
    "דג סקרן שט בים מאוכזב ולפתע מצא חברה",  # Hebrew
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले",  # Devanagari
    "আমি বাংলায় গান গাই। ১২৩৪৫",  # Bengali with Bengali digits
    "யாமறிந்த மொழிகளிலே தமிழ்மொழி போல் இனிதாவது எங்கும் காணோம்",  # Tamil
    "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน",  # Thai
    "我能吞下玻璃而不伤身体。人工智能正在改变世界。",  # Han
    "いろはにほへと ちりぬるを わかよたれそ つねならむ カタカナ",  # Japanese kana
    "다람쥐 헌 쳇바퀴에 타고파. 한국어 토크나이저",  # Hangul
    "ქართული ენა ძალიან ლამაზია",  # Georgian
    "Բարեւ ձեզ, ինչպես եք",  # Armenian
    "ሰላም ለዓለም። አማርኛ",  # Ethiopic
    "ខ្ញុំអាចញ៉ាំកញ្ចក់បាន",  # Khmer
    "བོད་ཡིག་ནི་སྐད་ཡིག",  # Tibetan
    "මට වීදුරු කෑමට හැකියි",  # Sinhala
    "હું કાચ ખાઇ શકુ છુ",  # Gujarati
    "నేను గాజు తినగలను",  # Telugu
    "ကျွန်တော် ကျွန်မ မှန်စားနိုင်တယ်",  # Myanmar
    "ຂອ້ຍກິນແກ້ວໄດ້ໂດຍທີ່ມັນບໍ່ໄດ້ເຮັດໃຫ້ຂອ້ຍເຈັບ",  # Lao
    "ᠪᠢ ᠰᠢᠯᠢ ᠢᠳᠡᠶᠦ ᠴᠢᠳᠠᠨᠠ",  # Mongolian
    "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",  # Cherokee
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 🏳️‍🌈 ❤️‍🔥 1️⃣ 🫠",
    "   leading and trailing   \n\n\n\t\t  mixed\u00a0nbsp\u2003em-space\u3000ideographic   ",
    " " * 40 + "\n" * 7 + "\t" * 5 + "x",
    "0 1 12 123 1234 12345 123456 3.14159 -42 1e-10 0xDEADBEEF ٠١٢٣٤٥ ०१२३",
    "e\u0301 a\u0308 n\u0303 ZWJ:\u200d ZWNJ:\u200c ZWSP:\u200b BOM:\ufeff LRM:\u200e RLO:\u202e",
    "private \ue000\uf8ff \U000f0000 nonchar \ufffe\uffff \U0010ffff replacement \ufffd",
    "control \x00\x01\x07\x1b[31m\x7f\x85 separators \x1c\x1d\x1e\x1f\u2028\u2029",
    "lone surrogates \ud800 and \udfff in Python text",
    "<|begin_of_text|><|eot_id|> [INST] <<SYS>> <s></s> typed by a user",
    "",
]
