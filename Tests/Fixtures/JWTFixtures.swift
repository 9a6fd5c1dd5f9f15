// Keys and tokens made once with Tests/integration/tools/jwt.py (python3
// `cryptography`) and pasted here, so the tests need no signing code. Every token
// was minted at `JWTFixtures.now` with nbf = now - 60 and exp = now + 3600 unless
// its name says otherwise; tests pass `now` explicitly.

public enum JWTFixtures {
    public static let now: Double = 1_700_000_000
    public static let issuer = "https://issuer.example"
    public static let expiry: Double = 1_700_003_600
    public static let notBefore: Double = 1_699_999_940
    public static let rsaJWK = """
        {"kty":"RSA","n":"2sIRByzLDDDML8HGtac-yBgXDkjtnXmP8WTeZKgi2YhwDk9ZVo6zcKWioWKESHA15tTbRASIfMeG6O\
        dYJeHGEw49elycC1H_kXuTVJZ3HAQQgWcIHlQBxTR_rL8xUcquwdKgxoWsEA9iSigIxo_0US6o6AxTroNR0QerN8sg6lcFDF\
        YnmD1DfxHaYVt_bcc0orJ8SjnyYoK89SeIq_2Y2SpgDrYBYKu267c4IrnH74Nk5q4ZXsq-K_nHnBcmyIRbwC5VBSuzgSAwGP\
        VFRZxfHeHPYsLYcpORKenFFNlgX4uIUo9bfhWSFk1u1b_M21w_xE0wh1bv2C6LSj8A5Ngaow","e":"AQAB","kid":"rsa-\
        1","use":"sig"}
        """
    public static let ec256JWK = """
        {"kty":"EC","crv":"P-256","x":"jrQ-tjZ6cdzPL7iKvZi5d0bYDq5F4OOWSymCswHW25Y","y":"vu5dKky1b0vuLg4\
        4TyW4qvHsk6xWQqfuXQJZSAHpx-4","kid":"ec-256","use":"sig"}
        """
    public static let ec384JWK = """
        {"kty":"EC","crv":"P-384","x":"xrlBXXf3qu4Lf9UFDkc95YEX3x5PZj9waqS28rKMazd1U7XsGyOPr35GjGY7iGIb"\
        ,"y":"yvIs-OhfcOPsp0zuL7zAifrVY0ZqFa53-ZvTD5eDs_HRB5wNAXubNmhi86VP_3vI","kid":"ec-384","use":"si\
        g"}
        """
    public static let ed25519JWK = """
        {"kty":"OKP","crv":"Ed25519","x":"e6uAe2CZp-JFfgbmYhtFrXtRxjM2uhjAKfpANQW_ZO0","kid":"ed-1","use\
        ":"sig"}
        """
    public static let smallRSAJWK = """
        {"kty":"RSA","n":"u3scLesPPbj5aEoCv-CkaAmjiiEvj78zcZZ0L0OtBmosOXiV2GZurti9qE_aSPjyMsJa_QRfwUh-ON\
        LMVAXKDRzcM0Tf3Q5VurwryVO-BOKYzx80CBDBnzqDkIhHt6DvXF5hAFtfm0hmnPfj8BVhn02luF2iYoRSRNr6o68iIcE","\
        e":"AQAB","kid":"rsa-small","use":"sig"}
        """
    public static let ec256Y = "vu5dKky1b0vuLg44TyW4qvHsk6xWQqfuXQJZSAHpx-4"
    /// The P-256 key's y plus one: a point off the curve.
    public static let offCurveY = "vu5dKky1b0vuLg44TyW4qvHsk6xWQqfuXQJZSAHpx-8"

    /// The four signing keys, as an issuer publishes them.
    public static let jwks = "{\"keys\":[\(rsaJWK),\(ec256JWK),\(ec384JWK),\(ed25519JWK)]}"

    public enum Token {
        public static let rs256 = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.2F5WkYm1k139fidoLWD5O0pBsLLWAbUvSyLp1mUeICJ_qmi0cJho4jOjK0Pov78jVZ2hA-Xyp7X5x3h5psIt\
            kyR8gPxCmIVScByXsa_WHRLIKML27Al-oKhSoLEv6CL2ksu083ydJkTyNnCrBc4nUvfg3UIFUvO0S39PcUz8WyWiGUEsMN_O\
            1OFtwlhLBZ9oRolpGbIcWa3DJVl6Se96giUdUx7bQOlEmOt5TlueFQ6qXAHoOlkmjaZGN3vuNFhrNtNccV2l4CkLzyIOT6o2\
            esMnIFZ5lsg6fFPWoVxNZ9RL9SOM8zNX6BsZZemJCqzhep3RAnwJRxsE9eFD9fRrTQ
            """
        public static let rs384 = """
            eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.QmOS4SWLT3BNjQSV1ysvvK3esJTgI9U0fWnpJIx52o8jOEVBk07cqGMMIPktjLdM-WWPLRHRvWLH5F68M0kH\
            HccE5zfZkRWA-Gwp0hNXRBUC9_Anpz5Kojyj-s8-bKcH0dn4rrmGY4lqDss_83Ik6TmWXrAG83X9Ej1Lx-yq1ye1l11fm3w0\
            vvzWq0ewgKKhCZl590ioALSQxHmbZy0m9H3wgL2SxgSzxmtjugQBIGcRDQVKoc7y5U0t8Bv4-WjPmmzx4tB4ohs_G1nO6WY2\
            mKPW12_bJZLwNORshWNDWXE2Juju4GflO59RAGIttYHaAjNbtRs3we-Ht0C-VPg_xQ
            """
        public static let rs512 = """
            eyJhbGciOiJSUzUxMiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.m0IIMAZtV8tQHoicYkKd3SjAwUO5fIimLAE2BEKdBujqwO87F_QSTL3P5y51XUoKX64rRStyc7jeTwa7zVYe\
            jtkuEx-fi9STGs4F1m7V4thNlD8N7mAyt4jbx-yQ0nchcy9JyaJDM4SE28gAD_0ss4iIMC4xK9DYXi5y3D7h8Bn_1-1npqNi\
            0XrQpOhbIvUJiSFui6cy88MlRg-yztn1lLjJQvt1TE3w91s4EcT0eKJ_je_Tf1aJDNgJ2FxQf_oRVL0Glg9ORoNPInly-6QU\
            FoSo3YDbujPAzKJjP-3YATXtQVP1aGsRKYaDd8CqlDndB54HBpNvERr_spX_s91fNQ
            """
        public static let es256 = """
            eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGx\
            lIiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQ\
            iOiJzaG9wIn0._zzfpbmnr8WLKaMnE5bJ1BTEC5AGeUWz169mNPsjopXbgaAnss3wYlPR1Ub5Xfjo9GyDNm0USMZfo30BpMZ\
            OpA
            """
        public static let es384 = """
            eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTM4NCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGx\
            lIiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQ\
            iOiJzaG9wIn0.RpRJ-hK0iDflmpqVkj3iCW0uL67wOW9fzpXoRCecJPUo1KsbSFz1mvIJmNt9L1z2JFCj9_clg1beopQtWq3\
            WZO1aiaLN7_1q8_Crfgs1ICJTqaZG7kBmZCwFj0r882GS
            """
        public static let eddsa = """
            eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImVkLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlI\
            iwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQiO\
            iJzaG9wIn0.ZGQ8tEKxPtxFfJuJk7pt84SPlLeKnFAXMUnDueF3QOoKK3BWXUBhvOQCgs903Ur9hgCbTl5S7YCCPBIgDVXfC\
            A
            """
        /// No kid in the header.
        public static let rs256WithoutKid = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiaWF0IjoxNzAwMDA\
            wMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQiOiJzaG9wIn0.gaf62Ww\
            PyHGX3N0nURhOi0IOwvhYE3Tlrq13IBpVciM6aCb2XQ39gDSMLzCAeknWJrnmYaiQV13107PkZIu7UQXOtVJbe9TXVc8CB9y\
            CBZ5mD3ULqwaMib94ATSmrDNv8M8aSDLncm0r1Xb2MsQAqGooBZO8MqnL18iAs2O79-7NvWQllNqEVURmqYBL4R-lpwpdTIg\
            1Aeq_S2mKqOTpjyxfOrwVwXZWDCbTJz2bFh2__43wb9kyrzVSTM90YZBG2IRJFcslxr8oOwJ_G8Uo2W5kRUFJDsG5pZSJ1fj\
            oJVKcKdBOhdki_jln8KDbX0AX4Z-mXpCsrmFAPjbtZD6G4g
            """
        /// No kid in the header.
        public static let es256WithoutKid = """
            eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiaWF0IjoxNzAwMDA\
            wMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQiOiJzaG9wIn0.RlQXgkg\
            KmohEkR-JzbQ0m30M8BWbtZ19jND-p_3h_n-dth0DNbZUshgrw_SNVxPKFWRhKFrB_lnxwQ0vSa0-fg
            """
        /// aud ["billing", "https://shop/"].
        public static let audienceList = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OlsiYmlsbGluZyIsImh0dHBzOi8vc2hvcC8iXX0.nSkV6fnCrzKo6K6n7bvq1bnPLEv8g3piibW9KWGGf_C-ymOE2eGZe9At\
            _QzSzTvkEE57AgapmOJjCjWnnKi0ylmIer688oGufFESfmt-b4pdv0wkf0yA3D-qmWqP5WX_QlQHuznm71Sc-K7OvMG1mNfT\
            oWh_8lgViAb2dwHN6RTfP8y5DiZrgCDNBVt9yxcdlHFpW1E4dr-DZ6hzyhC6aECf6C_3diowmZLG0TIEd93CXh8bDkVfrpjG\
            G8dBJ-WwOLQvKIx68A3qdamL4dQ0jdOKz_maM9YAoXcqwXAGZt3xkIOteT4Eznn1HCFQkymMHPSgqrqyEYh5j0lK7GiVrg
            """
        /// No sub.
        public static let withoutSubject = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwiYXVkIjoic2hvcCJ9.VM8t2ZC\
            e4ZAA7a22VwiVdJ8AK-ZmhbCJQyorx63evBpBwQaIjqSI7B_nnmEPyObrFXsUu4Uh85UN0OXPDU-ppEmJFRs0_3K0eJFTWvw\
            -H32XPS02P2xJehmpJhxOLBzEhaFNJUCKpvcTVGoQbM6m-YYGgVVheFtOL3ArYAY_WYY1WolHcMbNu3Q3GapMFgBT69j875t\
            HrKL40b0Tches4nkI5e6ILG3j7rPgIWoSyiAsHEz8RRAeCeW8epcIlTqSms_86FS09xW59B8dlhQJavPSbTCH5jeqi4Y0dN5\
            05pwFMEWBOve8M6qk8aNTAjikrV8W2C5O7FBwSBqTo2z6tA
            """
        /// No exp.
        public static let withoutExpiry = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsInN1YiI6ImFsaWNlIiwiYXVkIjoic2hvcCJ9.Ot163AY3na0\
            o4sZFp8Spzi5k8zK_3C72X0kM3VlbZsaMkfv3_VtsZWQEPEcyyc9HgF8XrdpQPiX046dMh4XyTYKE6gSlJMhta9GDFU8kkng\
            RrM0-1iW4grCCjecR14JnCXHDe9ayNkvpb8p39wzyHOL0sbJJcKz_KPZjjfHjJZhbfKnI1QSZ6WLi389qdbSj2We9EZXrLP5\
            sNXLFBwDZiQvZ2oGXbUcCM3Zq4GoCu0uMk-8TsZe1DR3QkjyavjgIlsyt4qPlIggNq-lYfyLsN8JfuTHCSrpC7c3DnX2HfBd\
            gL7FiqKfxJOajiqRqZ5i-qY9aQ9MmTa8_SHB6lfGWpA
            """
        /// iss https://other.example.
        public static let otherIssuer = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL290aGVyLmV4YW1wbGUi\
            LCJpYXQiOjE3MDAwMDAwMDAsIm5iZiI6MTY5OTk5OTk0MCwiZXhwIjoxNzAwMDAzNjAwLCJzdWIiOiJhbGljZSIsImF1ZCI6\
            InNob3AifQ.Phc0m7e-QHJpwNyVC3gXUYQkPvpSeVRh0bYaHcLwt8xNBfe0IRFoW9qwiDU5hUKgk6GUBtJTV9Sfr0acIDLEB\
            3OepfYArdEb0wfIUmOhP--Wy6cYdEkbihACQGU1GYaVs38Dr0R58ve_MiQJU-uRVjSElo0uO5_2p3cJxu7RIXBiJEZ3E0M47\
            gQUdxlJzcbS3_PfCsm0GFbuim6bG6BsJ18oin2zobU73PYQRUDA6GAIG76A2yWJuRiSGOJqv4SgcLSB--CCcagtcTMqj16wX\
            lzT_aIc8GxOvI73wNVR6q8vwpdjKKmQA39NBzFtEi3TbdXyJhwQmUngXZ5bo8TF0w
            """
        /// HS256 keyed with the RSA key's modulus bytes: the algorithm-confusion attack.
        public static let hs256WithModulus = """
            eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.4-L0UV0UStMx78WRPLD-NcBRi02n2ba1dGoA4Ni_6tM
            """
        /// kid rsa-9, which the key set does not have.
        public static let unknownKid = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS05In0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.pNayxewbV6Q3zOqdBwvv7TqxCzmjY3sAwWM5LgT5y-YSrjHAdJROhTVO5aNZZcu80rHXF6BwlNyzaYQ8uIgz\
            2bO5fTHP3qxj402sIqiw1EEyN2_rJxf6TqwvsoV1gtELD_LZs_CEJ9YVRiIA4v9kC9rOzf9pmox8JnZMRfgt-s45LUUYcEZ2\
            Wy5F4vq3gxfFM3AyRcfw05--FGVjRL59H-bkh9ihK1JPnqCxYg0Qwjl8brE5t_pfZX4yWDJ5zzj53KmPQesYgmhmK1mCh7SI\
            GOtOqQsYRqxmWn0lgjd1-pPl8ExOXQs1Z4d8QdjpC1NrNSXIxJTosr8yGs2Lpefp6Q
            """
        /// ES256 signed by the P-256 key, but kid rsa-1.
        public static let es256NamingRSAKey = """
            eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.3qyxL01cOWRXdFHq0HirRV6UOAO8BzpcZ7q1HD51jcjcqptD5fdfap85y5CTbsHPUpMo9hwl8GEixLRhw388\
            6w
            """
        /// RS256 with kid rsa-1, signed by a different RSA key.
        public static let signedByAnotherKey = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.cihR5r9Twr5mkMomGrHwK_BwERfZp0y0Zo5ZCYIgD_r9CANoQW1E9qvmrHtGBGL_DAoaAKi2Eap_CzkacOyX\
            u2hE9o2S9EVlC7mBRbIX110GCxKK3ucvDQaLB3GMlUPDiJDr0y45OuGWBwrVQqo2HoYM9CqF3GIrvtCeRe9j22tlNbM3jrG8\
            Qqz_tXcEa5mpYIQUpInWOWXwy5Q6q4G7WkRlNul2rT65WYhDLaTAKGGvaIvu9T_ARm8zDLik46dRVpFjQcIrir2H7-C4VQfA\
            A5eYD1--0tWJgzATW-8g_Bjz92ZfCiX3NrsNcbUoh3REPPMOwJgjsxjdX6PpNKFqUQ
            """
        /// crit: ["exp"] in the header, otherwise genuine.
        public static let criticalHeader = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIiwiY3JpdCI6WyJleHAiXX0.eyJpc3MiOiJodHRwczov\
            L2lzc3Vlci5leGFtcGxlIiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3Vi\
            IjoiYWxpY2UiLCJhdWQiOiJzaG9wIn0.qa_8kATe2hE172f-mNprATybvVGF5T9m2j_yjpFP9rS2uxRQUiOYiWMJtXBVG5bd\
            SWTNUa9MrfkgbzmyBbbXt4mWDHQ9uaJNDMOXSVQFxVOPQlCeRaNCqGbqjavJFMVkVTLzBsv9kOCI7lWfqb-MxmTOocDQoGEl\
            _zAm562P37zBqt3vl763eIn_ZxXPKuNPHbO_HYNpwbFQABostOOBO098vQORgpkyvF5ngBHjzG-fn4t06eZIEz4_RgDAr4XS\
            YJQTg5Wv_alTLJ7sr92HrKOnTvVtKzjSbCxHomahzVSPEIDfAA0metUG5GL942wgTYwOSqHK-PFARr01kJtiAw
            """
        /// A genuine signature over a payload that is a JSON array.
        public static let payloadArray = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.WyJpc3MiLCJzdWIiXQ.Wf_51mqzDk0OjWXmCGtV5\
            XGXeFW5EYGTqlUNhTWa_8OqD4TZR-pC-aei5Ibn956q59bt0V53UT1n-oCp5qdW5u7roZZAbVe7id2hdqRzZoYnT1HMEGTC9\
            oI_qJbkBiN-C5ZzM_-63BRl1inZjbEpSS-_C9TOMf9qzCIok88ZbGT9uBBzZBHl00zhX-5LpjY-HqtdYq-OSw984JcdUGcqZ\
            7-3wp93JWze8TRmfA8etHbG34BjTG-on8MdUbiHBRw0-tcxz8CGGv_JPTqfbX4ul7sDoei0IvlO4LW4zT6UT7q5wszgOjqJ8\
            K51rHvWQ240ELw54v7nNVqxAkWrU-eXxQ
            """
        /// exp "tomorrow".
        public static let expiryNotANumber = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6InRvbW9ycm93Iiwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIn0.rSOE-MlGdTvkqOPP4KJlC0YDmJ8mSRbRPNDET2HW-x7dnOgqpuHAkZNAJyUbgM0cP7nvBgF50eU5kEvtlOpN\
            C6L6KDviZaErj6bO0cYFoq_T6SSLItJZi7n7G1_4SN-ikd_oDX_XatVCI7mD8PtrUV1qECRkXK1EdaFYLbPqLBfGLpZnzv3z\
            DOw2dH4n1aC0l7lZ5ChGPTAveRMYVvB0F2MFrw0ZO9qRLDYv626o_UHB0mzOSCWwvS5g-3ILVimchiQl18PDfzBpV5P6BaZ5\
            r94KJnKZ1SECsEq-ybxFsBq_xOgqDst4CijfUpWOXudLsQjmrmE0YayYzD0vmF2mYg
            """
        /// aud ["shop", 7].
        public static let audienceNotStrings = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            Olsic2hvcCIsN119.nuHncQUNTxGYmlltqwsX229pVT0VOORcOUSqzruojhb8Ggvq2H0iAhPSg4dar2_2RPHorhiYIWhiZLK\
            jYafVBma4HVDvxWgqhYA1u_Cq_q9CihTc5XjbXErK-q5BvKdz0jvoJs3aGjMRwuA1FfBDQou1JlEpIdZgcfUdEuMmT_bqO7r\
            LdOqnPq_qW2mz0gr1VoDCVI3FXEe_741NXqmDrr6HelFbrrhuFLMYu4eduynVuqOW6ologGqG4-0oGb1OZ434D77yLjQNHai\
            IqZxLCMGMNZs_dlZMO_NxHYD8M__NoLUgyQICtS6TzKZAV7ENqmqh6WD_tsrFnCvi-Y3xlQ
            """
        /// Also realm {roles: [admin, viewer]}, groups [ops], azp web-app.
        public static let nested = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UiLCJhdWQi\
            OiJzaG9wIiwicmVhbG0iOnsicm9sZXMiOlsiYWRtaW4iLCJ2aWV3ZXIiXX0sImdyb3VwcyI6WyJvcHMiXSwiYXpwIjoid2Vi\
            LWFwcCJ9.vloRwIvYHB4v6dc8Gr262FobALacAh2xjymNrcGBSkbb7_pYKU8oqxpR4Wjx8giKAmgysR0O0UEuPYaItx_7e3y\
            ecSpVUpqVsmhS7LrHoMuqLtGLrAUVwewX6RkwHAYdoJB_9JvaLOv3gg546VVVgDfyftIlBL0_ZCtyfCrFSn1zs7nrJabk-rz\
            q9O2ost_edVEEEKDeKJaikZLH_xNwevo2FYFLx7ct99Y2tqN_-R77lkI0ZFqUr9ef1GyBBMtGF4AD997n9qvhUzp5pZaAf__\
            m0b5N63uCdxjFANnE3em1OXBx_QqsbLFPbSMRF2475nkVQY_rlf7QObb9itBYjA
            """
        /// No aud.
        public static let withoutAudience = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYWxpY2UifQ.siFME\
            LuhOKFF5FiXEPzf8zkVSTtmmRxboTBCzhSKsC9-OO7PCKeZYnRK67spAMJJe5w7op6cQg3-7RsvATPFxGoLbtogOo8FsNXQJ\
            dbqLyqIUqheUh1_wmpjcXRSg1GopQvLJA6fkd1tmskr-RR9L4lek8b9rrCRoXvGIidmwINpwjY6Y4pVAX9l_FDLI56oTMNn_\
            dRIS9BQyPmSSCj7DmAK9Bc0ezhdwEgx5bYLT_pgqfvyuX7QESTVVdttUqROPqVJM7C36py8DIACUovzY9wjNHcodD6bgJel7\
            QvmUZQEU1meTxMZV6B1_9VNZbUnR5Qqzc6ireuLmAmVDLzGbw
            """
        /// sub bob.
        public static let bob = """
            eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxl\
            IiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiYm9iIiwiYXVkIjoi\
            c2hvcCJ9.h4lt-1CWOcSMefDKCpgSAYOwEYdlfYYOHaRErawRpQ_Ztk1Hiucpe2J7dqUdDxl1QAi8ipvBgpM6I8AnwYnTMk6\
            OJFZT_5nhWj8o7iF3Imlg9FiYcrJWNmCyOla0FqljnPCTkdWnZ6I3AOhUC0g4Hf6cTbCafk_IYW0eRQwdaiovD_IbfP1OTzJ\
            eTNX8BFZZN2C-t9ZT1Ptzj7F85bFm5pJzkjCikEsa39zeBKLvsdRfbocovGV4AQNLuTslBVFxY4Z1-s223NeYs6lqorKIbch\
            2XZsSRavhd5ZCy2bsIPi5J5Fveq3Ikd3euOC3STzmHG_1EPgl2zlnPViXc44l8A
            """
        /// iss https://second.example, sub carol, ES256 with the P-256 key.
        public static let secondIssuer = """
            eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTI1NiJ9.eyJpc3MiOiJodHRwczovL3NlY29uZC5leGFtcGx\
            lIiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE2OTk5OTk5NDAsImV4cCI6MTcwMDAwMzYwMCwic3ViIjoiY2Fyb2wiLCJhdWQ\
            iOiJzaG9wIn0.6stLplSOObEanbHOyKgA2sKm0Ki9-3dNFiY7kr5ojhiv88NdVRhVY05ZtuS-dbu_M4lxr1mRdS3akToGPZK\
            IlA
            """
    }
}
