"""Optional integrations (torch, vllm, asgi): each imports its library lazily."""
