"""BlenderBot 3-style agents: search, long-term memory, tools and a sandbox, safety, feedback."""
