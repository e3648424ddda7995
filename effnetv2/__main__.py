import sys

from effnetv2.cli import main

sys.exit(main())
