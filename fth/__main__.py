import sys

from fth.cli import main

sys.exit(main())
