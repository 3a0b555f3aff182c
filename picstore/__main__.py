from picstore.cli import main

main()
