"""Documents for the `rag` agent: text extraction, chunking, sparse vectors, the Redis store and the search index.

Redis holds the source of truth (each document, its chunks and their sparse vectors); Qdrant indexes them for
search, either in memory in each searching process (rebuilt from Redis when the user's documents change) or on a
Qdrant server when QDRANT_URL is set. docs/documents.md explains the choice.
"""
