"""Deterministic sample documents for the tokenizer benchmark (bench/tokenizer_speed.py).

Mixed text built from the sentences and code snippets below, shuffled, repeated and varied at
random: English prose, source code, accented Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
Han, Japanese, Hangul, Thai, emoji, numbers and whitespace runs, cut into documents of a few KB.
The same seed gives the same documents. `corpus_docs` cuts a user's text file the same way, and
`join_docs` joins documents into long texts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

ENGLISH = [
    "The committee met on a wet Tuesday afternoon and agreed, after some argument, to postpone "
    "the vote until spring.",
    "Most of the village's water still comes from a well that was dug by hand more than a century "
    "ago.",
    "If the cache is cold, the first request can take several seconds; after that, responses "
    "arrive almost at once.",
    "She packed two notebooks, a borrowed camera and far too many pencils for a weekend trip.",
    "Nobody expected the old ferry to survive another winter, yet it kept crossing the bay every "
    "morning at 6:40.",
    "The report's appendix lists 37 species of moth recorded in the orchard between May and "
    "September.",
    "He didn't answer the letter right away; he wanted to think about what they'd asked of him.",
    "A good benchmark measures one thing at a time and says exactly how it was run.",
    "Prices rose by 4.5% in the first quarter, mostly because of shipping costs and a poor harvest.",
    "When the power failed, the reading room went quiet except for the rain against the windows.",
    "We'll need three volunteers on Saturday: one for the gate, one for the tea urn, and one for "
    "the raffle.",
    "The bridge was closed for repairs, so the bus took a long detour through the industrial "
    "estate.",
    "Tokenizers split text into pieces that a model can count, embed and predict, one after "
    "another.",
    'Her grandmother\'s recipe calls for "a handful" of flour, which is not a unit any scale '
    "understands.",
    "According to the timetable the last train leaves at 23:15, but it's usually ten minutes late.",
    "Isn't it strange how a song you haven't heard in years can bring back an entire summer?",
    "The museum's new wing (opened in 2019) holds maps, compasses and a very patient parrot.",
    "Shipping was free over $50, so naturally everyone's basket came to $50.01.",
    "I'VE TOLD YOU TWICE ALREADY: THE MEETING IS ON THURSDAY, NOT FRIDAY!",
    "Version 2.3.1 fixes the crash on start-up and makes the export about 30 percent faster.",
]

LATIN_ACCENTED = [
    "Le café était fermé, alors nous avons marché jusqu'à la boulangerie près de la gare.",
    "Les élèves ont préparé une exposition sur l'histoire du quartier et ses anciens métiers.",
    "Die Brücke über den Fluss wird nächste Woche gesperrt, weil die Straßenbahn neue Gleise "
    "bekommt.",
    "Übermorgen beginnt das Schuljahr, und die Kinder freuen sich schon auf ihre Freunde.",
    "El mercado abre a las ocho de la mañana y cierra cuando se acaban las naranjas.",
    "¿Cuántos años tenía tu abuela cuando llegó a la ciudad? ¡Qué historia tan increíble!",
    "A reunião foi adiada porque metade da equipa estava de férias no Algarve.",
    "Il treno per Firenze è partito in ritardo, ma siamo arrivati in tempo per la cena.",
    "Wczoraj wieczorem padał deszcz, więc zostaliśmy w domu i graliśmy w szachy.",
    "Příští týden pojedeme na hory, pokud bude hezké počasí.",
    "Yarın sabah erkenden yola çıkacağız, çünkü yol uzun ve trafik yoğun olabilir.",
    "Hôm nay trời đẹp, chúng tôi đi dạo quanh hồ và uống cà phê sữa đá.",
    "Mâine dimineață vom vizita muzeul de științe naturale din centrul orașului.",
    "A könyvtár hétvégén is nyitva tart, de csak délután négy óráig.",
    "Ég fór í sund í morgun og hitti gamlan vin úr skólanum.",
    "Søndag går vi en tur langs fjorden, hvis det ikke regner for meget.",
]

CYRILLIC = [
    "Сегодня утром поезд опоздал на двадцать минут, и мы успели выпить чаю на вокзале.",
    "В библиотеке открылась выставка старых карт и фотографий нашего города.",
    "Если завтра будет солнечно, мы поедем за город собирать грибы.",
    "Программа работает быстрее, когда данные уже лежат в памяти.",
    "Він довго читав лист, а потім мовчки поклав його на стіл.",
    "Ми зустрілися біля фонтану о сьомій годині вечора.",
    "Утре ще има концерт в градината пред старата гимназия.",
    "Научници су открили нову врсту лептира у планинама на југу земље.",
]

GREEK = [
    "Το πρωί πήγαμε στην αγορά και αγοράσαμε φρέσκα ψάρια και ελιές.",
    "Η βιβλιοθήκη της πόλης είναι ανοιχτή κάθε μέρα εκτός από την Κυριακή.",
    "Αν βρέξει αύριο, θα μείνουμε στο σπίτι και θα διαβάσουμε.",
    "Ο δάσκαλος εξήγησε το πρόβλημα με υπομονή και καθαρά παραδείγματα.",
]

ARABIC = [
    "ذهبنا إلى السوق في الصباح واشترينا الخبز الطازج والتمر.",
    "تفتح المكتبة أبوابها من الساعة التاسعة صباحاً حتى الخامسة مساءً.",
    "إذا كان الطقس جميلاً غداً فسوف نسافر إلى البحر.",
    "كتب الطالب مقالة طويلة عن تاريخ مدينته القديمة.",
    "امروز هوا خیلی خوب است و ما به پارک می‌رویم.",
    "הבוקר ירד גשם חזק ולכן הגענו מאוחר לעבודה.",
]

DEVANAGARI = [
    "आज सुबह बारिश हो रही थी, इसलिए हम देर से घर से निकले।",
    "पुस्तकालय में बच्चों के लिए कहानी की किताबों की एक नई अलमारी लगाई गई है।",
    "अगर कल मौसम अच्छा रहा तो हम पहाड़ों पर घूमने जाएंगे।",
    "उसने चाय बनाई और खिड़की के पास बैठकर अखबार पढ़ने लगा।",
    "मी उद्या सकाळी लवकर बाजारात जाणार आहे।",
]

HAN = [
    "今天早上下了很大的雨，所以我们晚了半个小时才出门。",
    "图书馆每天早上九点开门，晚上八点关门。",
    "如果明天天气好，我们就去山上看日出。",
    "這家小店的麵條很好吃，每天中午都有很多人排隊。",
    "他把那本旧书送给了他最好的朋友。",
    "程序在数据已经加载到内存之后运行得更快。",
]

JAPANESE = [
    "今朝は雨が強かったので、駅まで歩くのに時間がかかりました。",
    "図書館は月曜日が休みですが、ほかの日は夜八時まで開いています。",
    "明日の天気が良ければ、みんなで海に行くつもりです。",
    "このラーメン屋さんはいつも混んでいて、三十分ぐらい待つことがあります。",
    "カタカナで書かれたメニューを読むのは、まだ少し難しいです。",
]

HANGUL = [
    "오늘 아침에는 비가 많이 와서 회사에 조금 늦게 도착했습니다.",
    "도서관은 월요일에 쉬고 나머지 요일에는 저녁 여덟 시까지 엽니다.",
    "내일 날씨가 좋으면 친구들과 함께 바다에 갈 거예요.",
    "이 식당의 김치찌개는 정말 맛있어서 자주 와요.",
]

THAI = [
    "เมื่อเช้านี้ฝนตกหนัก เราจึงออกจากบ้านช้ากว่าปกติ",
    "ห้องสมุดเปิดทุกวันตั้งแต่เก้าโมงเช้าถึงหนึ่งทุ่ม",
    "ถ้าพรุ่งนี้อากาศดี เราจะไปเที่ยวทะเลกัน",
    "ร้านก๋วยเตี๋ยวร้านนี้อร่อยมาก คนจึงต่อคิวยาวทุกวัน",
]

SCRIPTS = {
    "latin": LATIN_ACCENTED,
    "cyrillic": CYRILLIC,
    "greek": GREEK,
    "arabic": ARABIC,
    "devanagari": DEVANAGARI,
    "han": HAN,
    "japanese": JAPANESE,
    "hangul": HANGUL,
    "thai": THAI,
}

EMOJI = [
    "😀", "😂", "🙏", "🎉", "🚀", "🔥", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇧🇷",
    "✅", "❌", "⚠️", "🤖", "🍕", "☕", "1️⃣", "🧪", "📈", "🌧️", "🙈🙉🙊", "✨✨✨", "👀",
]  # fmt: skip

# %NAME% / %NUM% / %WORD% are filled with random identifiers, numbers and words per use.
CODE = [
    """def %NAME%(items, limit=%NUM%):
    \"\"\"Return the first `limit` items that are not None.\"\"\"
    out = []
    for item in items:
        if item is None:
            continue
        out.append(item)
        if len(out) >= limit:
            break
    return out
""",
    """class %NAME%:
    def __init__(self, path: str, retries: int = %NUM%) -> None:
        self.path = path
        self.retries = retries
        self._cache: dict[str, bytes] = {}

    def read(self, key: str) -> bytes:
        if key not in self._cache:
            with open(f"{self.path}/{key}", "rb") as f:
                self._cache[key] = f.read()
        return self._cache[key]
""",
    """static int %NAME%(const char *buf, size_t len) {
    int total = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\\n') total += %NUM%;
        else if (buf[i] >= '0' && buf[i] <= '9') total += buf[i] - '0';
    }
    return total;
}
""",
    """export async function %NAME%(url, options = {}) {
  const res = await fetch(url, { ...options, headers: { "X-Retry": "%NUM%" } });
  if (!res.ok) {
    throw new Error(`request failed: ${res.status} ${res.statusText}`);
  }
  return (await res.json()).items.filter((x) => x.%WORD% !== undefined);
}
""",
    """fn %NAME%(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / %NUM%.0;
    Some((mean, var.sqrt()))
}
""",
    """SELECT u.id, u.%WORD%, COUNT(o.id) AS orders
FROM users AS u
LEFT JOIN orders AS o ON o.user_id = u.id AND o.created_at >= '2024-01-01'
WHERE u.active = TRUE
GROUP BY u.id, u.%WORD%
HAVING COUNT(o.id) > %NUM%
ORDER BY orders DESC
LIMIT 50;
""",
    """<div class="card %WORD%">
  <h2 id="%NAME%">Results for &quot;%WORD%&quot;</h2>
  <ul>
    <li><a href="/items/%NUM%?sort=asc&amp;page=2">Next page &raquo;</a></li>
  </ul>
</div>
""",
    """{
  "name": "%NAME%",
  "version": "1.%NUM%.0",
  "tags": ["%WORD%", "%WORD%"],
  "limits": {"cpu": 0.5, "memory_mb": %NUM%, "retries": null},
  "enabled": true
}
""",
    """#!/usr/bin/env bash
set -euo pipefail
for f in "$@"; do
  n=$(wc -l < "$f")
  if [[ $n -gt %NUM% ]]; then
    echo "$f: $n lines" >&2
  fi
done | sort -t: -k2 -n | tail -n 20
""",
    """func %NAME%(ctx context.Context, ids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(ids))
	for _, id := range ids {
		name, err := lookup(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("lookup %d: %w", id, err)
		}
		out[id] = name
	}
	return out, nil
}
""",
    """@@ -%NUM%,7 +%NUM%,8 @@ def %NAME%(self):
-        total = sum(x for x in self.values)
+        total = sum(x for x in self.values if x is not None)
+        # skip missing readings (see issue #%NUM%)
         return total / max(1, len(self.values))
""",
    """2024-05-%NUM%T12:04:33.918Z INFO  server: listening on 0.0.0.0:8080
2024-05-%NUM%T12:04:35.101Z WARN  pool: connection %NUM% idle for 30s, closing
2024-05-%NUM%T12:04:36.777Z ERROR handler: %WORD% failed: timeout after 5000ms
""",
]

IDENTIFIERS = [
    "parse_header", "loadConfig", "read_chunk", "TokenCache", "retry_later", "merge_ranks",
    "_flush", "HTTPClient", "build_index", "normalize", "to_utf8", "kv_store", "xs", "tmp2",
]  # fmt: skip
WORDS = ["status", "email", "title", "region", "score", "owner", "label", "price", "kind"]


def random_number(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return str(rng.randrange(10))
    if kind == 1:
        return str(rng.randrange(10**6))
    if kind == 2:
        return f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 5)}f}"
    if kind == 3:
        return f"{rng.randrange(1990, 2031)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 4:
        return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    if kind == 5:
        return f"+{rng.randrange(1, 99)} {rng.randrange(100, 999)} {rng.randrange(10**6, 10**7)}"
    if kind == 6:
        return f"0x{rng.getrandbits(32):08x}"
    if kind == 7:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(10, 41)))
    if kind == 8:
        return f"${rng.randrange(1, 10**6):,}.{rng.randrange(100):02d}"
    return ".".join(str(rng.randrange(256)) for _ in range(4))


def whitespace_run(rng: random.Random) -> str:
    kind = rng.randrange(7)
    n = rng.randrange(2, 40)
    if kind == 0:
        return " " * n
    if kind == 1:
        return "\t" * (n // 4 + 1)
    if kind == 2:
        return "\n" * (n // 8 + 2)
    if kind == 3:
        return " " * n + "\n"
    if kind == 4:
        return "\r\n" * (n // 10 + 1)
    if kind == 5:
        return "\u00a0" * (n // 5 + 1) + "\u3000"
    return "".join(rng.choice(" \t\n ") for _ in range(n))


def vary(sentence: str, rng: random.Random) -> str:
    """A random variant of a sample sentence, so repeats are not verbatim."""
    words = sentence.split(" ")
    if len(words) > 3 and rng.random() < 0.35:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words) + 1), random_number(rng))
    if rng.random() < 0.08:
        words.insert(rng.randrange(len(words) + 1), rng.choice(EMOJI))
    text = " ".join(words)
    if rng.random() < 0.1 and len(text) > 4:  # a typo: two neighbouring characters swapped
        i = rng.randrange(len(text) - 1)
        text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    r = rng.random()
    if r < 0.04:
        text = text.upper()
    elif r < 0.08:
        text = text.lower()
    elif r < 0.11:
        text = f'"{text}"'
    return text


_PLACEHOLDER = re.compile(r"%(NAME|NUM|WORD)%")


def code_snippet(rng: random.Random) -> str:
    def fill(m: re.Match) -> str:
        if m.group(1) == "NAME":
            return rng.choice(IDENTIFIERS)
        if m.group(1) == "NUM":
            return str(rng.randrange(1, 5000))
        return rng.choice(WORDS)

    text = _PLACEHOLDER.sub(fill, rng.choice(CODE))
    indent = rng.random()
    if indent < 0.2:
        text = text.replace("    ", "\t")
    elif indent < 0.35:
        text = text.replace("    ", "  ")
    return text


def paragraph(rng: random.Random, pool: Sequence[str], lo: int = 2, hi: int = 7) -> str:
    return " ".join(vary(rng.choice(pool), rng) for _ in range(rng.randint(lo, hi)))


def prose_doc(rng: random.Random) -> Callable[[], str]:
    def part() -> str:
        r = rng.random()
        if r < 0.06:
            return f"## {vary(rng.choice(ENGLISH), rng)[:40].rstrip()}\n\n"
        if r < 0.12:
            items = [vary(rng.choice(ENGLISH), rng) for _ in range(rng.randint(2, 5))]
            return "".join(f"- {item}\n" for item in items) + "\n"
        if r < 0.17:
            return paragraph(rng, LATIN_ACCENTED, 1, 3) + "\n\n"
        if r < 0.2:
            return whitespace_run(rng)
        return paragraph(rng, ENGLISH) + rng.choice(["\n\n", "\n\n", "\n", " ", "\r\n\r\n"])

    return part


def code_doc(rng: random.Random) -> Callable[[], str]:
    def part() -> str:
        r = rng.random()
        if r < 0.15:
            return f"# {vary(rng.choice(ENGLISH), rng)}\n"
        if r < 0.25:
            return f"\n{paragraph(rng, ENGLISH, 1, 3)}\n\n```\n{code_snippet(rng)}```\n\n"
        if r < 0.3:
            pool = SCRIPTS[rng.choice(sorted(SCRIPTS))]
            return f"// {rng.choice(EMOJI)} {vary(rng.choice(pool), rng)}\n"
        return code_snippet(rng) + "\n" * rng.randint(1, 2)

    return part


def script_doc(rng: random.Random) -> Callable[[], str]:
    pool = SCRIPTS[rng.choice(sorted(SCRIPTS))]

    def part() -> str:
        r = rng.random()
        if r < 0.1:
            return paragraph(rng, ENGLISH, 1, 2) + "\n\n"
        if r < 0.15:
            return " ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))) + "\n"
        if r < 0.2:
            return f"{random_number(rng)} {random_number(rng)}\n"
        return paragraph(rng, pool) + rng.choice(["\n\n", "\n", " ", "\n\n\n"])

    return part


def chat_doc(rng: random.Random) -> Callable[[], str]:
    pools = [ENGLISH, ENGLISH, *SCRIPTS.values()]

    def part() -> str:
        r = rng.random()
        if r < 0.1:
            return whitespace_run(rng)
        if r < 0.18:
            cells = [random_number(rng) for _ in range(rng.randint(2, 5))]
            return "| " + " | ".join(cells) + " |\n"
        if r < 0.24:
            return rng.choice(EMOJI) * rng.randint(1, 6) + "\n"
        user = f"{rng.choice(WORDS)}{rng.randrange(100)}"
        emoji = rng.choice(EMOJI) if rng.random() < 0.4 else ""
        return f"{user}: {vary(rng.choice(rng.choice(pools)), rng)} {emoji}\n"

    return part


DOC_KINDS = [(prose_doc, 0.3), (code_doc, 0.25), (script_doc, 0.3), (chat_doc, 0.15)]


def synthetic_docs(megabytes: float, seed: int, doc_kb: tuple[float, float]) -> list[str]:
    rng = random.Random(seed)
    kinds = [k for k, _ in DOC_KINDS]
    weights = [w for _, w in DOC_KINDS]
    docs: list[str] = []
    total = 0
    while total < megabytes * 1e6:
        target = int(rng.uniform(*doc_kb) * 1000)
        part = rng.choices(kinds, weights)[0](rng)
        pieces: list[str] = []
        size = 0
        while size < target:
            piece = part()
            pieces.append(piece)
            size += len(piece.encode("utf-8"))
        docs.append("".join(pieces))
        total += size
    return docs


def corpus_docs(path: Path, seed: int, doc_kb: tuple[float, float]) -> list[str]:
    """A text file cut at line ends into documents of a few KB (over-long lines are cut too)."""
    rng = random.Random(seed)
    text = path.read_text(encoding="utf-8", errors="replace")
    docs: list[str] = []
    pieces: list[str] = []
    size = 0
    target = int(rng.uniform(*doc_kb) * 1000)
    for line in text.splitlines(keepends=True):
        while line:
            room = max(1, target - size)
            piece, line = line[:room], line[room:]  # `room` characters are >= `room` bytes
            pieces.append(piece)
            size += len(piece.encode("utf-8"))
            if size >= target:
                docs.append("".join(pieces))
                pieces, size = [], 0
                target = int(rng.uniform(*doc_kb) * 1000)
    if pieces:
        docs.append("".join(pieces))
    return docs


def join_docs(docs: Sequence[str], chars: int, limit: int) -> list[str]:
    """Documents joined (with a blank line) into texts of about `chars` characters, none longer
    than `limit` unless a single document is."""
    texts: list[str] = []
    pieces: list[str] = []
    size = 0
    for doc in docs:
        if pieces and size + len(doc) > limit:
            texts.append("\n\n".join(pieces))
            pieces, size = [], 0
        pieces.append(doc)
        size += len(doc) + 2
        if size >= chars:
            texts.append("\n\n".join(pieces))
            pieces, size = [], 0
    if pieces:
        texts.append("\n\n".join(pieces))
    return texts


def utf8_bytes(docs: Sequence[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)
