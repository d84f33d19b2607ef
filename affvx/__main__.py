from affvx.cli.main import main

main()
