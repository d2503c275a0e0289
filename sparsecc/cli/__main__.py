from sparsecc.cli import main

main()
