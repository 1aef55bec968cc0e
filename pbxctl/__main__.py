import sys

from pbxctl.cli import main

sys.exit(main())
