"""Network building blocks: candidate operations, the mixed edge (reference path), the
fast supernet path and the evaluation networks of found cells."""
