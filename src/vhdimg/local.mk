# vhdimg, the image tool.
