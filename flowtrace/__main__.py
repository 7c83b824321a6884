from flowtrace.cli import main

main()
