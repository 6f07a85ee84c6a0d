"""``python -m pcdarts.nb201 {query|convert} ...``."""
from pcdarts.nb201.cli import _main

raise SystemExit(_main())
