from ingot.cli.app import main

main()
