"""Reading slides: OpenSlide / tiffslide slides (:mod:`.slide`), multiplex channel stacks and
folders (:mod:`.stacks`), Zeiss CZI (:mod:`.czi`), and what a file says about itself (channel
names, pixel size: :mod:`.metadata`). The first step of the pipeline; imports no other step."""
