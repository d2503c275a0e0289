import sys

from sparsecc.data.datasets import main

sys.exit(main())
