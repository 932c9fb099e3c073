print("ridesim")
