"""`python -m data_prep.synthetic`: write the synthetic corpus (see the package docstring)."""

from . import main

main()
