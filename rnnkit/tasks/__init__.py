"""Tasks end to end: each module turns files into a trained run directory and a run into answers.

What is here: one module per task (`lm`, ...), each bringing together data readers, a task model, the
trainer and decoding. What is not: the models, the loop or the readers themselves.
"""
