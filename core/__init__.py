"""The shared vocabulary at the bottom of mlyard: settings, the error tree, typed specs, storage URIs,
names that cross a system boundary, and the connection to the platform. Every folder may import it;
it imports nothing of the project (tests/test_layout.py checks).
"""
