"""``python -m hf_masking``: the ``hf-masking`` command line."""

from .cli import main

main()
