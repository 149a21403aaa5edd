"""Reports that go beyond the plain tables: the explorable HTML page (`bench report`) and the paired
significance tests shared by that page and `bench table --significance`."""
