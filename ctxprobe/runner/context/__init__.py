"""Where the prompt's K/V lives during a pass: one process (`local`) or sharded over a ring of ranks (`ring`).

Both give the layer loop (ctxprobe/runner/loop.py) the same steps: embed the prompt, run it
through one block (its K/V kept in the layer's tier), run tail tokens (branches, decoded tokens)
through the block against that K/V and their own, the hidden states the head reads.
"""
