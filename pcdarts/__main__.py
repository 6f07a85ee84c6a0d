from pcdarts.cli import main

raise SystemExit(main())
