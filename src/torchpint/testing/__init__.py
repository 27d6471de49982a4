"""Test harnesses and deliberate failures: what the tests, the demo and ``--inject-fault`` use, not the library."""
