import sys

from torchpint.cli.main import main

sys.exit(main())
