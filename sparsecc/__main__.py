import sys

try:
    from sparsecc.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads: nothing was started
    sys.exit(130)

main()
