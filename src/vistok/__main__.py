from vistok.cli import main

main()
