import sys

from mathrl.cli import main

sys.exit(main())
