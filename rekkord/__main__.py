from rekkord.cli.main import main

main()
