from smolpack.cli import main

main()
