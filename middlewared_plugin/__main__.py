import sys

from middlewared_plugin.cli import main

sys.exit(main())
