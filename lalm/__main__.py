from lalm.cli import main

raise SystemExit(main())
