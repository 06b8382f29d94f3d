import sys

from yujing.cli import main

sys.exit(main())
