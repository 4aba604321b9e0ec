"""alexnet_jax: AlexNet (Krizhevsky, Sutskever, Hinton, 2012) in JAX/Flax.

Importing the package, or any of its modules, changes nothing about the process: no environment
variable, no global setting. The commands (`python -m alexnet_jax.main`, ...) make the process
settings they want themselves (alexnet_jax/runtime.py). The modules and the order in which they
may import each other are in docs/design.md.
"""
