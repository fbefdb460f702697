"""`wavekv serve`: an OpenAI-compatible HTTP server on Ray Serve over the generation engine.

Modules, along the request path: `cli` (the command), `app` (the Serve application and its
replicas), `api` (routes), `server` (request -> engine request -> response), `protocol` (the
OpenAI request/response bodies and errors), `chat_template`, `text` (incremental
detokenization, stop strings), `engine_loop` (the thread that steps the engine), `directory`
(one /metrics over all replicas).
"""
