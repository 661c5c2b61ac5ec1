from ctxprobe.cli import main

main()
