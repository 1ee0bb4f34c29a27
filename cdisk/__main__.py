from cdisk.cli.app import main

main()
