from e5x.cli import main

raise SystemExit(main())
