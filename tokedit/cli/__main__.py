from tokedit.cli import main

main()
