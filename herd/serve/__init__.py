"""`herd serve`: an OpenAI-compatible HTTP server over a continuous-batching engine.

engine.py schedules requests into a running batch at token boundaries; slots.py assigns KV-cache
rows and reuses a shared prompt prefix; sampling.py samples every row with its own parameters;
protocol.py and app.py are the OpenAI API; metrics.py its Prometheus metrics; cli.py the command;
constraints.py decodes response_format and forced tool calls under an llguidance grammar mask;
tools.py formats Llama 3.1 tool definitions and parses its JSON tool calls; media.py reads a
vision model's image_url parts and image_slots.py keeps each slot's image keys and values.
"""
