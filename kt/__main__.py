import sys

from kt.cli import main

sys.exit(main())
