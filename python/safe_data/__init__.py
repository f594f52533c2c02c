"""Safe Data, installed with pip: the `safe-data` binary (in the environment's
scripts folder) and the `safe-data` kernelspec (in its share/jupyter/kernels).

The kernelspec starts `python -I -m safe_data kernel ...`: jupyter_client
replaces "python" by the Jupyter server's own interpreter (sys.executable), so
the kernel starts even when the environment's bin folder is not on PATH;
`__main__` then execs the binary installed next to that interpreter.
"""
