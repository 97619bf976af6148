"""Entry point of `make reproduce`: see bilinear.reproduce."""

from bilinear.reproduce import main

if __name__ == "__main__":
    main()
