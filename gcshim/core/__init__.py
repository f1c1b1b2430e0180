"""The checkpointing pipeline's core: select layers, patch them, the per-call path, restore.

Nothing here imports or names a framework with checkpointing of its own: it asks the
frameworks registered in `hooks` (transformers registers itself on `import gcshim`).
"""
