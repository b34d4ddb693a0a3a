"""LLM providers: the OpenAI-compatible client, prices and cost accounting."""
