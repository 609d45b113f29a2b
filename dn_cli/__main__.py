from dn_cli.cli import main

main()
