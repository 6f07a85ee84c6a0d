"""``python -m pcdarts.nb201 {query|convert} ...``."""
from .cli import _main

raise SystemExit(_main())
