from coop.cli import main

raise SystemExit(main())
