import sys

from clvr.cli import main

sys.exit(main())
