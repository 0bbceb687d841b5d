def test_echo_and_health(archive, clinic_a):
    archive.assert_serving()
