import sys

from sandbox.cli.commands import main

sys.exit(main())
