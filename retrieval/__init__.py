"""Embedders, faiss indexes and the local knowledge base. Import `retrieval.api` from callers;
nothing here loads torch, faiss or open_clip until it is used."""
